"""Runs killed with SIGKILL or stopped by a preemption signal resume exactly;
dead rollout workers and trainer ranks are recovered. Each test drives the
real CLI in a subprocess."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import stop_own_ray

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("own_ray_dir")]  # kill only this module's Ray
TIMEOUT = 600


def _args(model: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gradus.launch.cli",
        "train",
        "configs/dump.yaml",
        f"model.path={model}",
        f"run.run_dir={run_dir}",
        "run.steps=4",
        "run.checkpoint_every=1",
        "wandb.mode=disabled",
        "rollout.max_tokens=16",
        "reward.length=1.0",
        "curriculum.budget={kind: constant, budget: 4}",
        "trainer.lr=1e-3",
        "eval.every=0",
        *extra,
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
    stop_own_ray(os.environ["RAY_TMPDIR"])  # Ray's own daemons, if any outlived the driver (only this module's)


ASYNC = ("rollout.async_generation=true", "rollout.max_staleness=1", "run.checkpoint_every=2")
LORA = ("trainer.lora={rank: 8}", "trainer.gradient_checkpointing=true")  # issue 18: resuming a LoRA run is exact too
# issue 31: screening seeds, and greso's state (4 rows per distribution recur, so its streaks and skips build up)
SCREEN = ("rollout.screen={samples: 2}", "curriculum.prompts={kind: greso}", "data.train_size=4")
MODES = {"sync": LORA + SCREEN, "async": ASYNC}
# Sync: the resumed run that gets the stop signal has 2 ranks under ZeRO-2 (from a 1-rank ZeRO-1
# checkpoint), the last one 1 rank under ZeRO-1 again (from that 2-rank checkpoint).
LAYOUTS = {
    "sync": (("trainer.world_size=2", "trainer.zero_stage=2"), ("trainer.world_size=1", "trainer.zero_stage=1")),
    "async": ((), ()),
}


@pytest.fixture(scope="module")
def uninterrupted(tiny_model, tmp_path_factory):
    """The uninterrupted reference run of each mode, made once for the tests that compare with it."""
    runs: dict[str, list[dict]] = {}

    def get(mode: str) -> list[dict]:
        if mode not in runs:
            run_dir = tmp_path_factory.mktemp(f"full-{mode}")
            subprocess.run(_args(tiny_model, run_dir, *MODES[mode]), check=True, timeout=TIMEOUT, capture_output=True)
            runs[mode] = _metrics(run_dir)
        return runs[mode]

    return get


def _assert_same_run(a: list[dict], b: list[dict], mode: str, rounding_from: int = 4) -> None:
    """Every step equal; from step `rounding_from` on (trained on another world size)
    the update's own numbers only up to float rounding (reduction order)."""
    assert [m["step"] for m in b] == [0, 1, 2, 3]
    for ma, mb in zip(a, b):
        probs = sorted(k for k in ma if k.endswith("/prob"))
        assert probs and [ma[k] for k in probs] == [mb[k] for k in probs]  # curriculum: exactly
        dist = sorted(k for k in ma if k.startswith("dist/"))  # greso's skips, p_e and calibration among them
        assert dist == sorted(k for k in mb if k.startswith("dist/"))
        assert [mb[k] for k in dist] == [pytest.approx(ma[k], abs=1e-9) if ma[k] is not None else None for k in dist]
        for key in ("reward/mean", "accuracy", "length/tokens_mean"):  # data order and generation
            assert mb[key] == pytest.approx(ma[key], abs=1e-6), (ma["step"], key)
        for key in ("train/loss", "train/grad_norm"):
            assert mb[key] == pytest.approx(ma[key], abs=1e-6 if ma["step"] < rounding_from else 1e-4), (
                ma["step"],
                key,
            )
    if mode == "async":  # step 1 is generated while step 0 trains, step 3 while step 2 trains (lag 1 both times)
        assert [m["async/lag_max"] for m in b] == [0, 1, 0, 1]
    else:  # screening stopped some prompts at 2 samples, the same ones after resume
        screened = [m["groups/screened_out"] for m in b]
        assert screened == [m["groups/screened_out"] for m in a] and sum(screened) > 0
        assert sum(v for m in b for k, v in m.items() if k.endswith("/skipped_before_rollout")) > 0


def _until_line(proc: subprocess.Popen, text: str) -> list[str]:
    """Read the run's output up to the first line containing `text`."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"run exited ({proc.wait()}) without printing {text!r}: {''.join(lines)[-3000:]}")


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_sigkill_then_stop_signal_then_resume_auto_match_uninterrupted_run(tiny_model, tmp_path, uninterrupted, mode):
    """The curriculum scheduler actor is SIGKILLed (sync: during step 2) and the
    driver after the step-2 checkpoint; `--resume auto` continues and gets the
    preemption warning (SIGUSR1, then a second signal) during step 3: it finishes
    that step, checkpoints it (async: with step 4's batch, generated ahead) and
    exits 75; `--resume auto` again finishes the run. Every step's metrics equal
    the uninterrupted run's (sync: the last two launches on another world size
    and ZeRO stage, so their updates up to float rounding)."""
    killed = tmp_path / "killed"
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(
            [*_args(tiny_model, killed, *MODES[mode]), "--resume", "auto"],
            start_new_session=True,
            stdout=log,
            stderr=log,
        )
        # Sync: during step 2 (restart from the snapshot after step 1). Async: while the run starts (its steps
        # are too quick to aim at), so the prefetch thread's first produce() meets the dead actor.
        _wait_for(
            lambda: (_metrics(killed) or mode == "async") and _pids("ray::CurriculumScheduler"),
            proc,
            "the scheduler actor",
        )
        for pid in _pids("ray::CurriculumScheduler"):
            os.kill(pid, signal.SIGKILL)
        _wait_for(  # a kill that lands after step 2 used the scheduler is noticed one step later: wait for both
            lambda: (
                (killed / "checkpoints" / "step-000001" / "state.json").exists()
                and "scheduler actor died; restarted" in (tmp_path / "first.log").read_text()
            ),
            proc,
            "the step-2 checkpoint and the scheduler's restart",
        )
        _kill_tree(proc)
    assert len(_metrics(killed)) < 4, "the run finished before it was killed"
    assert "curriculum scheduler actor died; restarted" in (tmp_path / "first.log").read_text()
    first, last = LAYOUTS[mode]

    # Sync: no periodic checkpoints, so the one after step 3 can only come from the signal.
    every = ["run.checkpoint_every=0"] if mode == "sync" else []
    proc = subprocess.Popen(
        [*_args(tiny_model, killed, *MODES[mode], *every, *first), "--resume", "auto"],
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        started = _until_line(proc, "resumed from")
        os.kill(proc.pid, signal.SIGUSR1)
        time.sleep(0.5)
        os.kill(proc.pid, signal.SIGTERM)
        output = "".join(started + _until_line(proc, "stopped on SIGUSR1")) + proc.stdout.read()
        assert proc.wait(timeout=TIMEOUT) == 75, output[-3000:]
    finally:
        if proc.poll() is None:
            _kill_tree(proc)
    assert "already stopping" in output
    assert ("world_size=2 zero_stage=2: weights, optimizer state" in output) == bool(first)
    assert [m["step"] for m in _metrics(killed)] == [0, 1, 2], output[-3000:]
    preempted = killed / "checkpoints" / "step-000002"
    assert json.loads((preempted / "state.json").read_text())["step"] == 2
    assert (preempted / "pending.json").exists() == (mode == "async")
    assert not list(preempted.rglob("*.pt")) and not list(preempted.rglob("*.pkl"))  # JSON and safetensors only

    resumed = subprocess.run(
        [*_args(tiny_model, killed, *MODES[mode], *last), "--resume", "auto"],
        timeout=TIMEOUT,
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert ("saved with trainer.world_size=2 zero_stage=2" in resumed.stdout) == bool(last)
    _assert_same_run(uninterrupted(mode), _metrics(killed), mode, rounding_from=2 if first else 4)
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["step-000002", "step-000003"]
    wall = json.loads((killed / "done.json").read_text())[
        "wall_seconds"
    ]  # every segment's wall time, not the last one's
    assert wall >= sum(m["time/step"] for m in _metrics(killed))


def _pids(pattern: str) -> list[int]:
    """This module's Ray workers matching `pattern`: children of its own raylets
    (own_ray_dir), never the workers of another Ray on the machine."""

    def pgrep(*args):
        return [int(p) for p in subprocess.run(["pgrep", *args], capture_output=True, text=True).stdout.split()]

    return [
        pid
        for raylet in pgrep("-f", f"raylet --raylet_socket_name={os.environ['RAY_TMPDIR']}")
        for pid in pgrep("-P", str(raylet), "-f", pattern)
    ]


@pytest.mark.parametrize("victim", ["ray::RolloutActor", "ray::TrainerWorker"])
def test_dead_worker_is_recovered(tiny_model, tmp_path, victim):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        _args(tiny_model, run_dir, "run.steps=5"),
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_for(
            lambda: (run_dir / "checkpoints" / "step-000001" / "state.json").exists() and _pids(victim), proc, "step 2"
        )
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


MEMORY_KILL = """
import time, ray
from gradus.launch.run.faults import WORKER_DIED
ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)

@ray.remote
class Hog:
    def hold(self):
        time.sleep(60)

try:
    ray.get(Hog.remote().hold.remote(), timeout=50)
except WORKER_DIED as err:
    print("died:", type(err).__name__)
"""


def test_a_call_killed_by_rays_memory_monitor_counts_as_a_dead_worker():
    """Ray's memory monitor (here set to fire at once) raises OutOfMemoryError,
    not RayActorError, to the caller; the driver must restart on it like on a crash."""
    env = {**os.environ, "RAY_memory_usage_threshold": "0.01", "RAY_memory_monitor_refresh_ms": "100"}
    out = subprocess.run([sys.executable, "-c", MEMORY_KILL], env=env, capture_output=True, text=True, timeout=120)
    assert "died: OutOfMemoryError" in out.stdout, out.stdout + out.stderr[-2000:]


INIT_FAILS = """
import ray
from gradus.launch.errors import GradusError
from gradus.launch.run.faults import Watchdog
ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)

@ray.remote
class Broken:
    def __init__(self, **kwargs):
        raise TypeError("__init__() got an unexpected keyword argument 'group_size'")

    def ping(self):
        return 1

try:
    Watchdog(60).get(Broken.remote().ping.remote(), "scheduler (ping)")
except GradusError as err:
    print("refused:", err)
"""


def test_an_actor_whose_init_raises_is_reported_not_restarted():
    """A driver and workers from different versions of the code, a bad argument:
    __init__ raises on every restart. The console gets the exception and where
    it was raised, at once (not three restarts that each say only 'died')."""
    out = subprocess.run([sys.executable, "-c", INIT_FAILS], capture_output=True, text=True, timeout=120)
    line = next((x for x in out.stdout.splitlines() if x.startswith("refused:")), out.stdout + out.stderr[-2000:])
    assert "scheduler (ping): the actor could not start" in line, line
    assert "TypeError: __init__() got an unexpected keyword argument 'group_size'" in line, line
    assert '(File "<string>", line 10, in __init__)' in line, line


def test_sigterm_during_start_up_stops_promptly(tiny_model, tmp_path):
    """No step to finish yet: start-up ends at once, Ray is shut down, exit 75."""
    run_dir = tmp_path / "starting"
    proc = subprocess.Popen(
        _args(tiny_model, run_dir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        _wait_for(lambda: (run_dir / "config.yaml").exists(), proc, "the run directory")  # signals are ours by now
        time.sleep(1.0)  # inside ray.init or the actors' start
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            _kill_tree(proc)
    assert proc.returncode == 75, output[-2000:]
    assert "during start-up" in output and "finishing the step in flight" not in output
    assert not _metrics(run_dir)
    deadline = time.time() + 15  # Ray's daemons exit with the shutdown
    while subprocess.run(["pgrep", "-f", os.environ["RAY_TMPDIR"]], capture_output=True).returncode == 0:
        assert time.time() < deadline, "Ray daemons outlived the stopped start-up"
        time.sleep(0.5)
