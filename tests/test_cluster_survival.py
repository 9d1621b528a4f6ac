"""Cluster survival without a cluster: stop signals become a request the step
loop acts on, and the cluster scripts' safe defaults (with a stand-in `ray`
that records its arguments): the job API (dashboard) listens on 127.0.0.1
unless widened, and token authentication stays on."""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from gradus.launch.run.preempt import StartupStopped, StopSignals

RAY_SHIM = '#!/usr/bin/env bash\necho "$*" >> "$RAY_CALLS"\n'


@pytest.fixture
def shim(tmp_path):
    (tmp_path / "ray").write_text(RAY_SHIM)
    (tmp_path / "ray").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "GRADUS_DASHBOARD_HOST")}
    env.update(
        PATH=f"{tmp_path}:{env['PATH']}",
        RAY_CALLS=str(tmp_path / "calls"),
        GRADUS_NODE_IP="10.0.0.1",
        HOME=str(tmp_path),
    )

    def run(script: str, *args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
        result = subprocess.run(
            ["bash", f"launch/cluster/{script}", *args], env=env, capture_output=True, text=True, timeout=30
        )
        calls = Path(env["RAY_CALLS"])
        return result, calls.read_text().splitlines() if calls.exists() else []

    return run


def test_head_binds_the_job_api_to_localhost_with_token_auth(shim):
    result, calls = shim("ray_head.sh", "--num-gpus=8")
    assert result.returncode == 0, result.stderr
    assert calls[0] == "get-auth-token --generate"  # `ray start` turns token auth on only if a token exists
    assert (
        calls[1].startswith("start --head")
        and "--dashboard-host=127.0.0.1" in calls[1].split()
        and "--num-gpus=8" in calls[1]
    )
    assert "ssh -L 8265:localhost:8265" in result.stdout


def test_head_dashboard_bind_can_be_widened(shim):
    _, calls = shim("ray_head.sh", "--dashboard-host=0.0.0.0")
    assert "--dashboard-host=0.0.0.0" in calls[-1].split() and "--dashboard-host=127.0.0.1" not in calls[-1]


def test_worker_without_the_head_token_says_how_to_get_it(shim):
    result, calls = shim("ray_worker.sh", "10.0.0.1:6379")
    assert result.returncode == 2 and "RAY_AUTH_TOKEN" in result.stderr and calls == []


def test_stop_signals_record_the_first_signal_and_restore_handlers(capfd):
    before = signal.getsignal(signal.SIGUSR2)
    with StopSignals("SIGUSR2") as stop:
        assert stop.requested is None
        stop.started()  # the first step is under way: signals let it finish
        os.kill(os.getpid(), signal.SIGUSR2)
        os.kill(os.getpid(), signal.SIGTERM)  # a second signal does not change the request nor kill the process
        assert stop.requested == "SIGUSR2"
    assert signal.getsignal(signal.SIGUSR2) is before and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    err = capfd.readouterr().err
    assert (
        "SIGUSR2: finishing the step in flight" in err and "SIGTERM while stopping on SIGUSR2: already stopping" in err
    )


def test_a_stop_signal_during_start_up_stops_it_at_once(capfd):
    with pytest.raises(StartupStopped, match="SIGUSR2"):
        with StopSignals("SIGUSR2"):
            os.kill(os.getpid(), signal.SIGUSR2)
            time.sleep(5)  # start-up work: interrupted, not waited for
    assert "SIGUSR2 during start-up: stopping" in capfd.readouterr().err


SBATCH_SHIMS = {
    "scontrol": (
        '#!/usr/bin/env bash\necho "scontrol $*" >> "$RAY_CALLS"\n'
        '[ "$1" = show ] && printf "node-a\\nnode-b\\n"; true\n'
    ),
    "srun": (
        "#!/usr/bin/env bash\n"
        'while [[ "$1" == -* ]]; do case "$1" in -w) shift 2 ;; *) shift ;; esac; done\nexec "$@"\n'
    ),
    "python": "#!/usr/bin/env bash\ncat >/dev/null 2>&1 &\necho 127.0.0.1\n",  # the head's IP; every node has joined
    # The driver: records its arguments, exits 75 on the forwarded USR1 as gradus does.
    "gradus": '#!/usr/bin/env bash\ntrap \'echo "gradus got USR1" >> "$RAY_CALLS"; exit 75\' USR1\n'
    'echo "gradus $*" >> "$RAY_CALLS"\nwhile true; do sleep 0.1; done\n',
}


def test_sbatch_forwards_the_warning_to_the_driver_and_requeues(shim, tmp_path):
    for name, text in SBATCH_SHIMS.items():
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o755)
    calls = tmp_path / "calls"
    env = {
        **os.environ,
        "PATH": f"{tmp_path}:{os.environ['PATH']}",
        "RAY_CALLS": str(calls),
        "SLURM_JOB_NODELIST": "node-[a-b]",
        "SLURM_JOB_ID": "42",
        "RAY_AUTH_MODE": "disabled",
    }
    proc = subprocess.Popen(
        ["bash", "launch/cluster/gradus.sbatch", "configs/dump.yaml", "run.steps=3"],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 30
    while not (calls.exists() and "gradus train" in calls.read_text()):
        assert proc.poll() is None and time.time() < deadline, (
            proc.stdout.read() if proc.poll() is not None else "timed out"
        )
        time.sleep(0.1)
    proc.send_signal(signal.SIGUSR1)  # what SLURM's --signal=B:USR1@300 does
    assert proc.wait(timeout=30) == 75, proc.stdout.read()
    log = calls.read_text()
    assert "gradus train configs/dump.yaml run.steps=3 cluster.address=127.0.0.1:6379 --resume auto" in log
    assert "gradus got USR1" in log and "scontrol requeue 42" in log
    assert "--dashboard-host=127.0.0.1" in log  # the head's `ray start`, through srun
